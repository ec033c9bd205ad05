"""rtbus: a real-time bus server speaking Odoo's bus protocol over PostgreSQL."""
