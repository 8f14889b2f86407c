module hotswapd.example/servers/tableflip

go 1.21

require (
	github.com/cloudflare/tableflip v1.2.3
	hotswapd.example/hotswap v0.0.0
)

// Debian's golang-github-cloudflare-tableflip-dev: built offline, no module proxy.
replace github.com/cloudflare/tableflip => /usr/share/gocode/src/github.com/cloudflare/tableflip

replace hotswapd.example/hotswap => ../../../go
