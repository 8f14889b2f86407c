module hotswapd.example/server

go 1.21

require hotswapd.example/hotswap v0.0.0

replace hotswapd.example/hotswap => ../../go
