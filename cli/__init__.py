"""The ``pipewave`` command line: the top layer (cli -> api -> service -> workers).

``main`` puts the commands on one Typer app (``app``): ``server_commands`` run on the cluster
side and import the service only when they run; ``client``, ``client_commands`` and
``client_views`` are the REST client, its commands and how they show jobs, which import nothing
of the service, the API or the workers, so the client install (no torch, no Ray) has them.
"""
