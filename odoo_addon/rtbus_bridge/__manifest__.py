{
    "name": "rtbus bridge",
    "summary": "Let rtbus serve Odoo's /websocket: answers its authorization proxy, "
               "receives presence updates and closes, signals logouts",
    "version": "19.0.1.0.0",
    "category": "Hidden/Tools",
    "license": "LGPL-3",
    "depends": ["bus"],
    "data": [],
    "installable": True,
    "auto_install": False,
}
