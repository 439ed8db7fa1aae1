"""Imported last by the worker pool's forkserver (see :data:`byzbench.executors.PRELOAD`).

Everything the server imported stays alive until it exits, so it is exempted from garbage
collection: the workers forked from it then never touch those pages for a collection (no
copy-on-write), and the server's own exit skips a ~0.4 s full collection, which would
otherwise hold the run's stdout open after byzbench itself has finished.
"""

import gc

gc.freeze()
