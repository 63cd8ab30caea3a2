from flask import render_template

from models import Song

from . import bp


@bp.route("/")
def index():
    songs = (Song.select().where((Song.published == True) & (Song.status == "processed"))  # noqa: E712
             .order_by(Song.created_at.desc()).limit(20))
    return render_template("main/index.html", songs=list(songs))
