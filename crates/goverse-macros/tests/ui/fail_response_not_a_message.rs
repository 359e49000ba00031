use goverse::prelude::*;

#[derive(Default)]
struct Thing;

impl Object for Thing {}

#[goverse::object]
impl Thing {
    #[method]
    async fn add(&mut self, request: Int32Value) -> Result<std::time::Duration, ObjectError> {
        Ok(std::time::Duration::from_secs(request.value as u64))
    }
}

fn main() {}
