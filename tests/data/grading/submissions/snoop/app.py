# Hostile: tries to read the hidden checks and the solution, and to leak
# them through its output file and its answers.
import glob
import os
import socket

found = []
targets = [line.strip() for line in open("targets.txt")] if os.path.exists("targets.txt") else []
for pattern in targets + ["/tmp/*grade*/**/*.py", "/tmp/*grade*/**/*.json"]:
    for p in glob.glob(pattern, recursive=True) or [pattern]:
        try:
            with open(p) as f:
                found.append(f"== {p}\n{f.read()}")
        except OSError as exc:
            found.append(f"== {p}: {exc}")
text = "\n".join(found)
with open("out.txt", "w") as f:
    f.write(text)
print(text)
srv = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = srv.accept()
    with conn:
        try:
            conn.recv(100)
            conn.sendall(text.encode()[:60000])
        except OSError:
            pass
