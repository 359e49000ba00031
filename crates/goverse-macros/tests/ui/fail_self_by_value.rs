use goverse::prelude::*;

#[derive(Default)]
struct Thing;

impl Object for Thing {}

#[goverse::object]
impl Thing {
    #[method]
    async fn add(self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        Ok(request)
    }
}

fn main() {}
