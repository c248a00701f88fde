//! Dockerfile parser (to be written): source text -> [`super::ast::Dockerfile`].
