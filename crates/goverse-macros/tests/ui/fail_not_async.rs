use goverse::prelude::*;

#[derive(Default)]
struct Thing;

impl Object for Thing {}

#[goverse::object]
impl Thing {
    #[method]
    fn add(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        Ok(request)
    }
}

fn main() {}
