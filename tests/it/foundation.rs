//! Foundation: `create` and `info` against mktorrent, libtorrent and
//! transmission-create; hostile .torrent files.
