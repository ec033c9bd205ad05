"""Entry point of the evented process: ``python -m rtbus.service.evented {gevent|single}``.

gevent must patch the standard library before anything else imports it
(threading, socket, select...), so this module imports nothing of rtbus and
hands over to `rtbus.service.gevent_process` once the patching is done.
"""

import sys


def main() -> None:
    from gevent import monkey

    monkey.patch_all()
    from rtbus.service import gevent_process

    sys.exit(gevent_process.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
