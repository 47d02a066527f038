# Hostile: accepts connections and never answers (and writes no file).
import os
import socket
import time

srv = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
held = []
while True:
    conn, _ = srv.accept()
    held.append(conn)  # keep it open, say nothing
    time.sleep(0.01)
