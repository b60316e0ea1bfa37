#!/usr/bin/python3
"""SMTP server for the tests and demo (Debian's python3-aiosmtpd): accepts
every message on 127.0.0.1 and records it as one JSON line (mail_from,
rcpt_tos, data).

Usage: smtp_sink.py --port N --log FILE --ready-file FILE
"""
import argparse
import json
import os
import threading

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, log):
        self.log = log
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        entry = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }
        with self.lock:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return "250 Message accepted"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    open(args.log, "a").close()
    controller = Controller(Recorder(args.log), hostname="127.0.0.1", port=args.port)
    controller.start()
    with open(args.ready_file + ".tmp", "w") as f:
        f.write(str(args.port))
    os.rename(args.ready_file + ".tmp", args.ready_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
