"""`sam2rt serve`: the live server, its sessions and protocol; static/ holds the browser app."""
