//! The builder: claims queued deployments from the database, clones them, builds them
//! in a container and uploads their output (the builder issue fills this in).
