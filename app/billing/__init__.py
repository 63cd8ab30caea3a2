"""Credits and Polar billing: the /billing page (balance, credit packs, ledger history),
checkout, the customer portal and the Polar webhook."""
from flask import Blueprint

bp = Blueprint("billing", __name__)


def register(app):
    from . import views  # noqa: F401  (views register on bp)

    app.register_blueprint(bp, url_prefix="/billing")
