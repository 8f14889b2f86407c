"""File watching: inotify (or polling) on directories, and the decision to act.

One concern per module, in the order an event travels: `inotify` (the kernel binding),
`dirwatch` (one watch per directory, re-armed), `mode` (inotify, auto or poll, and why;
doctor calls it too), `decide` (fire, ignore or wait, by content), `watcher` (the event
source the supervisor starts: ticks, debounce, callbacks).
"""
