use goverse::prelude::*;

#[derive(Default)]
struct Thing;

impl Object for Thing {}

#[goverse::object]
impl Thing {
    #[method]
    async fn add(&mut self, request: Int32Value) -> Int32Value {
        request
    }
}

fn main() {}
