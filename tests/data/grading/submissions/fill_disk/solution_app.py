# A correct answer (copied into a hostile submission).
import os
import socket


def answer(conn: socket.socket) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(100)
        if not chunk:
            break
        data += chunk
    if not data.strip():
        return
    try:
        conn.sendall(f"{int(data) ** 2}\n".encode())
    except ValueError:
        conn.sendall(b"error\n")


with open("out.txt.tmp", "w") as f:
    f.write("".join(f"{i * i}\n" for i in range(1, 11)))
os.rename("out.txt.tmp", "out.txt")
srv = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = srv.accept()
    with conn:
        try:
            answer(conn)
        except OSError:
            pass
