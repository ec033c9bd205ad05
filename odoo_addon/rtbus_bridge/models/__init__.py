from . import ir_http
