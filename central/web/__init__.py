"""Web: the REST API (``api``, ``allocation_api``, ``release_api``), its users and roles
(``auth``) and the ops dashboard (``dashboard``, ``static/``). The stages never import it."""
