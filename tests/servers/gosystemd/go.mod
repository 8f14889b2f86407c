module hotswapd.example/gosystemd

go 1.21

require (
	github.com/coreos/go-systemd/v22 v22.3.2
	hotswapd.example/hotswap v0.0.0
)

require github.com/godbus/dbus/v5 v5.0.4 // indirect

// Debian ships go-systemd as source (golang-github-coreos-go-systemd-dev); no module proxy.
replace (
	github.com/coreos/go-systemd/v22 => /usr/share/gocode/src/github.com/coreos/go-systemd
	github.com/godbus/dbus/v5 => /usr/share/gocode/src/github.com/godbus/dbus
	hotswapd.example/hotswap => ../../../go
)
