"""File watching: inotify (or polling) on directories, and the decision to act."""
