pub mod error;
pub mod io;
pub mod segment;
