"""A small web app for flex: GET / says who answered, GET /healthz says ok. Python 3.8+ stdlib only.

flex gives it its port in FLEX_PORT_HTTP; FLEX_NODE, FLEX_JOB and FLEX_ALLOC_ID say where it runs.
SIGTERM (flex's stop signal) shuts it down cleanly.
"""

import json
import os
import signal
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, "text/plain", b"ok\n")
        elif self.path == "/":
            body = {
                "greeting": os.environ.get("GREETING", "hello"),
                "host": socket.gethostname(),
                "node": os.environ.get("FLEX_NODE", ""),
                "job": os.environ.get("FLEX_JOB", ""),
                "alloc": os.environ.get("FLEX_ALLOC_ID", ""),
                "port": self.server.server_address[1],
            }
            self.reply(200, "application/json", (json.dumps(body) + "\n").encode())
        else:
            self.reply(404, "text/plain", b"not found\n")

    def reply(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # one line per request on stdout, which flex keeps as the log
        print("%s %s" % (self.address_string(), format % args), flush=True)


class Server(ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer.server_bind asks DNS for the host's FQDN, which hangs for seconds where DNS is
        # unreachable (an isolated network); the name is only used in CGI variables.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def main():
    port = int(os.environ.get("FLEX_PORT_HTTP", "8080"))
    server = Server(("0.0.0.0", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("serving on port %d" % port, flush=True)
    server.serve_forever()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
