"""The Ray cluster as the service sees it: connecting, nodes and slots, Ray's private APIs."""
