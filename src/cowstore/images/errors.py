"""Errors of the image layer: each names the image, reference or archive entry at fault."""

from cowstore.errors import InUse, InvalidArgument, NotFound


class ImageNotFound(NotFound):
    """No image has this id, id prefix or tag."""


class InvalidReference(InvalidArgument):
    """A `name:tag` reference is not well formed."""


class ImageInUse(InUse):
    """The image is used by a container or has several tags and removal was not forced."""


class BadImageArchive(InvalidArgument):
    """A docker-save archive, OCI layout or manifest is malformed or names missing content."""


class ArchiveToTerminal(InvalidArgument):
    """`save` or `export` was asked to write a binary archive to a terminal."""
