module hotswapd.example/server

go 1.21
