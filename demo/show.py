#!/usr/bin/python3
"""Print the first webhook or email a demo receiver recorded, readably."""
import base64
import email
import email.header
import json
import sys

kind, path = sys.argv[1], sys.argv[2]
with open(path) as f:
    first = json.loads(f.readline())
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
