(function_definition name: (name) @name) @definition.function
(class_declaration name: (name) @name) @definition.class
(interface_declaration name: (name) @name) @definition.type
(trait_declaration name: (name) @name) @definition.type
(method_declaration name: (name) @name) @definition.method
