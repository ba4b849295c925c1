mod deb;
mod rpm;
mod support;
mod tarball;
