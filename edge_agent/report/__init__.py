"""``edge-agent report``: read a replay or a capture (:mod:`.parse`), derive the facts
(:mod:`.facts`), draw and write the page (:mod:`.html`); :mod:`.command` is the CLI."""
