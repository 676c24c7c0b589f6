"""The plugins shipped with sassl, registered through the same entry points as third-party ones."""
