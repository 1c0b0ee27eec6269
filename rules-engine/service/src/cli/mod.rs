pub mod control;
pub mod dead_letters;
