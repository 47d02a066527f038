# Starter: TODO compute the square (this doubles instead).
import os
import socket

with open("out.txt", "w") as f:
    f.write("".join(f"{i * i}\n" for i in range(1, 11)))
srv = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = srv.accept()
    with conn:
        try:
            data = conn.recv(100)
            if data.strip():
                conn.sendall(f"{int(data) + int(data)}\n".encode())  # TODO: the square
        except (OSError, ValueError):
            pass
