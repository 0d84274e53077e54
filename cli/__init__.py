"""The ``pipewave`` command line: the top layer (cli -> api -> service -> workers).

``main`` holds the commands that run on the cluster side (train, schedule, plan, drain, serve;
they import the service lazily, so the client install works without torch and Ray);
``client`` and ``client_commands`` are the REST client and its commands.
"""
