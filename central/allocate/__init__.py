"""Allocate: stock given to validated orders. The engine (``allocation``, pure), the demand it
reads (``demand``), stock and sourcing (``inventory``), real-time or wave allocation
(``waves``) and what a shortage becomes (``shortage``)."""
