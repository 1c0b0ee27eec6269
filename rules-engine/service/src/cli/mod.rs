pub mod capture;
pub mod control;
pub mod dead_letters;
