//! Every method shape `#[goverse::object]` accepts compiles (the refused ones are the
//! compile-fail cases of goverse-macros' UI tests).

use goverse::prelude::*;

#[derive(Default)]
struct Thing;

impl Object for Thing {}

#[goverse::object]
impl Thing {
    /// With a context, writing.
    #[method]
    async fn add(
        &mut self,
        ctx: &ObjectContext,
        request: Int32Value,
    ) -> Result<Int32Value, ObjectError> {
        let _ = ctx.id();
        Ok(request)
    }

    /// Without a context, reading; custom wire name; std io Result alias.
    #[method(name = "Peek")]
    async fn look(&self, _request: Empty) -> std::io::Result<Empty> {
        Ok(Empty {})
    }

    /// Not a method: left alone.
    fn helper(&self) -> i32 {
        1
    }
}

#[test]
fn every_method_shape_compiles_and_keeps_its_wire_name() {
    let _ = ThingRef::new("x").with_timeout(std::time::Duration::from_secs(1));
    assert_eq!(<Thing as goverse::Dispatch>::METHODS[1].name, "Peek");
    let _ = Thing.helper();
}
