"""Playlists: a person's ordered lists of songs (`playlist`) and their entries
(`playlist_entry`, one row per song, unique per playlist, removed with the song or the list)."""
import models


def upgrade(database, migrator):
    database.create_tables([models.Playlist, models.PlaylistEntry], safe=True)
