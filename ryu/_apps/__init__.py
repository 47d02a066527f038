"""Apps that Ryu bundled and os-ken dropped, rewritten for the kit (served as `ryu.app.*`)."""
