//! ADD <http(s) url>: downloads a remote file for the graph's HTTP source (owned by the http helper).
