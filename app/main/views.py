"""The public feed at `/`: Trending, Newest and category sections; search and category filter.

`?q=` searches titles, tags and lyrics, `?category=<slug>` filters. Newest, a category's list and
the Following tab page with `?after=<cursor>` (keyset: the cursor the "Load more" link carries;
one that does not decode is a 400); search results, which are ranked, with `?page=N`. An old
`?page=N` link to a list that pages by cursor shows its first page. HTMX asks for fragments by
target: `feed-body` (live search) and `feed-more` (the "Load more" button).
`?tab=following` (signed in) lists the songs of the people one follows, newest first.
"""
from flask import abort, redirect, render_template, request, url_for
from flask_login import current_user

from ..extensions import htmx
from . import bp, feed


def _page_arg() -> int:
    try:
        return max(1, min(feed.MAX_PAGE, int(request.args.get("page", 1))))
    except ValueError:
        return 1


def _after_arg() -> str | None:
    return (request.args.get("after") or "").strip() or None


@bp.route("/")
def index():
    if request.args.get("tab") == "following":
        return _following()
    q = " ".join((request.args.get("q") or "").split())[:100]
    slug = (request.args.get("category") or "").strip()
    page = _page_arg() if q else 1  # only ranked search results page by number
    after = None if q else _after_arg()
    category = feed.category_by_slug(slug) if slug else None
    if slug and category is None:
        abort(404)
    listing = feed.listing(q, category, page, after=after)
    browsing = bool(q or category or page > 1 or after)  # a plain list instead of the sections
    trending, sections = [], []
    if not browsing:
        feed.trending_ranked()  # first: before the first refresh it computes the rankings once
    categories = feed.all_categories()
    if category is not None and all(c.id != category.id for c in categories):
        categories.append(category)
    if not browsing:
        trending, sections = feed.front(categories[:feed.SECTION_CATEGORIES])
    shown = [*trending, *listing.songs, *(s for sec in sections for s in sec.songs)]
    feed.annotate(shown, current_user)

    ctx = dict(q=q, category=category, categories=categories, listing=listing, browsing=browsing,
               trending=trending, sections=sections)
    target = htmx.target if htmx else None
    if target == "feed-more":
        template = "main/_feed_more.html"
    elif target == "feed-body":
        template = "main/_feed_body.html"
    else:
        template = "main/index.html"
    return render_template(template, **ctx)


def _following():
    """`/?tab=following`: the songs of the people the signed-in person follows (visitors are
    sent to log in first)."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=url_for("main.index", tab="following")), 302)
    listing = feed.following(current_user, after=_after_arg())
    feed.annotate(listing.songs, current_user)
    target = htmx.target if htmx else None
    if target == "feed-more":
        return render_template("profiles/_following_more.html", listing=listing)
    ctx = dict(tab="following", listing=listing, followed=current_user.follows.exists(),
               q="", category=None, categories=[])
    if target == "feed-body":
        return render_template("profiles/_following_feed.html", **ctx)
    return render_template("main/index.html", **ctx)
