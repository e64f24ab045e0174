"""Serve Debian's Barbican WSGI app on 127.0.0.1 for vmsup's tests (run by barbican.sh).

usage: /usr/bin/python3 serve.py DIR [WATCH_PID]

Binds 127.0.0.1 on a free port first, so that the private barbican.conf can name it
(host_href, the base of every secret_ref), then loads DIR/paste.ini with paste.deploy and
serves it with wsgiref, one request at a time: Barbican 15 is not safe to call from
several threads at once here (its lazy policy setup races: "Policy secrets:post has not
been registered"; sqlite says "database is locked"). Writes "http://127.0.0.1:PORT" to
fd 3 once it listens with the app loaded, then closes fd 3 (stdout is a log: Barbican's
libraries print there). With WATCH_PID, exits when that process does (a pidfd), so a test
program killed hard leaves no Barbican behind.
"""
import os
import select
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class Handler(WSGIRequestHandler):
    def log_message(self, fmt, *args):
        pass  # Barbican logs each request itself (stderr: DIR/barbican.log)


def watch(pid):
    fd = os.pidfd_open(pid)
    select.select([fd], [], [])
    os._exit(0)


def main():
    top = os.path.abspath(sys.argv[1])
    watch_pid = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if watch_pid:
        threading.Thread(target=watch, args=(watch_pid,), daemon=True).start()

    httpd = WSGIServer(("127.0.0.1", 0), Handler, bind_and_activate=True)
    port = httpd.server_address[1]
    url = "http://127.0.0.1:%d" % port
    conf = os.path.join(top, ".barbican", "barbican.conf")
    with open(conf + ".in") as f:
        text = f.read().replace("@HOST_HREF@", url)
    with open(conf, "w") as f:
        f.write(text)

    from paste.deploy import loadapp
    httpd.set_app(loadapp("config:" + os.path.join(top, "paste.ini")))

    with open(os.path.join(top, "url"), "w") as f:
        f.write(url + "\n")
    os.write(3, (url + "\n").encode())
    os.close(3)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
