"""nvramfs: a FUSE filesystem over an NVRAM image that simulates Linux VM_MIXEDMAP.

Layers (arrows point down only; see docs/ARCHITECTURE.md):

    cli  ->  fuse  ->  mm      (the simulated kernel VM)
                  `->  image   (the on-NVRAM format)
    everything -> events, errors
"""

__version__ = "0.1.0"

PAGE_SIZE = 4096
PAGE_SHIFT = 12
