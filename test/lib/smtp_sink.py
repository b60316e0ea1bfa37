#!/usr/bin/python3
"""SMTP server for the tests and demo (Debian's python3-aiosmtpd): accepts
every message on 127.0.0.1 and records it as one JSON line (mail_from,
rcpt_tos, data).

With --auth it also offers AUTH (PLAIN, LOGIN) without offering STARTTLS,
accepts any credentials, and records each login as a JSON line (auth,
login, password): a server that would see credentials sent in clear.

Usage: smtp_sink.py --port N --log FILE --ready-file FILE [--auth]
"""
import argparse
import json
import os
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


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

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        entry = {
            "auth": mechanism,
            "login": auth_data.login.decode("utf-8", "replace"),
            "password": auth_data.password.decode("utf-8", "replace"),
        }
        with self.lock:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return AuthResult(success=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--auth", action="store_true")
    args = ap.parse_args()
    open(args.log, "a").close()
    recorder = Recorder(args.log)
    if args.auth:
        controller = Controller(recorder, hostname="127.0.0.1", port=args.port,
                                authenticator=recorder.authenticate,
                                auth_require_tls=False)
    else:
        controller = Controller(recorder, hostname="127.0.0.1", port=args.port)
    controller.start()
    with open(args.ready_file + ".tmp", "w") as f:
        f.write(str(args.port))
    os.rename(args.ready_file + ".tmp", args.ready_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
