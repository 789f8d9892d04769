"""``edge-agent report``: read a replay or a capture (:mod:`.parse`), derive the facts
(:mod:`.facts`), draw the score plot and write the page (:mod:`.html`), draw the physical
trends and envelope spectra (:mod:`.physical`); :mod:`.command` is the CLI."""
