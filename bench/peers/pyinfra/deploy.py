"""The reference workload of bench/compare.py for pyinfra: per host, the app directory, the two
files (uploaded only when their checksum differs), the server started detached unless it runs
(stopped first when a file changed), then an HTTP check polled every 0.1 s (pyinfra's
server.wait polls at 1 s; this favours pyinfra). bench/compare.py writes the inventory
(bench_app_dir, bench_port, bench_src) and runs `pyinfra -y --parallel N INVENTORY deploy.py`.
"""

from pyinfra import host
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

APP = host.data.bench_app_dir
PORT = host.data.bench_port
SRC = host.data.bench_src

files.directory(name="app directory", path=APP, mode="755")
blob = files.put(name="blob.bin", src=f"{SRC}/blob.bin", dest=f"{APP}/blob.bin", mode="644")
script = files.put(name="server.py", src=f"{SRC}/server.py", dest=f"{APP}/server.py", mode="644")

server.shell(
    name="stop the server (a file changed)",
    commands=[f"""cd {APP} || exit 0
pid=$(cat server.pid 2>/dev/null) || exit 0
kill "$pid" 2>/dev/null || exit 0
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done"""],
    _if=any_changed(blob, script),
)

server.shell(
    name="start the server detached (unless it runs)",
    commands=[f"""cd {APP}
if [ -s server.pid ] && kill -0 "$(cat server.pid)" 2>/dev/null; then echo running; exit 0; fi
BENCH_PORT={PORT} setsid nohup python3 server.py > server.log 2>&1 < /dev/null &
echo $! > server.pid
echo started"""],
)

server.shell(
    name="alive (GET / answers 200)",
    commands=[f"""bash -c 'for i in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/{PORT} && printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 &&
   head -n 1 <&3) 2>/dev/null | grep -q " 200 " && exit 0
  sleep 0.1
done
exit 1'"""],
)
