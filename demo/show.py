#!/usr/bin/python3
"""Print the first webhook or email a demo receiver recorded, readably;
with a third argument "failed", the first about a failed execution (an
email: to the address given as the fourth)."""
import base64
import email
import email.header
import json
import sys

kind, path = sys.argv[1], sys.argv[2]
only_failed = len(sys.argv) > 3 and sys.argv[3] == "failed"
to = sys.argv[4] if len(sys.argv) > 4 else None


def is_failed(rec):
    if kind == "webhook":
        return json.loads(rec["body"]).get("status") == "failed"
    subject = email.message_from_string(rec["data"])["Subject"] or ""
    return "failed" in str(email.header.make_header(email.header.decode_header(subject)))


with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
first = next((r for r in records if (not only_failed or is_failed(r))
              and (to is None or to in r.get("rcpt_tos", []))), None)
if first is None:
    sys.exit(f"no {'failed ' if only_failed else ''}{kind} recorded")
if kind == "webhook":
    print(f"POST {first['path']}")
    for name in ("content-type", "user-agent", "webhook-id", "webhook-timestamp",
                 "webhook-signature", "x-api-key"):
        if name in first["headers"]:
            print(f"{name}: {first['headers'][name]}")
    print()
    print(json.dumps(json.loads(first["body"]), indent=2, ensure_ascii=False))
else:
    msg = email.message_from_string(first["data"])
    print(f"envelope: from {first['mail_from']} to {', '.join(first['rcpt_tos'])}")
    for name in ("Date", "From", "To", "Subject", "Message-ID"):
        value = str(email.header.make_header(email.header.decode_header(msg[name])))
        print(f"{name}: {value}")
    print()
    print(msg.get_payload(decode=True).decode("utf-8"))
