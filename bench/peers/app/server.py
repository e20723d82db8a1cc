"""The reference workload of bench/compare.py: GET / answers ok. Python 3.8+ stdlib only."""
import os
import signal
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(HTTPServer):
    def server_bind(self):  # HTTPServer's asks DNS for the FQDN: seconds where DNS is unreachable
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
Server(("0.0.0.0", int(os.environ.get("BENCH_PORT", "8080"))), Handler).serve_forever()
