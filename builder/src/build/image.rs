//! Image configs across the build: a base image's config JSON read into the graph's
//! [`ImageConfig`](crate::graph::ImageConfig), and a built stage's config written back out (owned by
//! the image helper).
