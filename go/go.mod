module hotswapd.example/hotswap

go 1.21
